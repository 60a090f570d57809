metadata description = 'Metric alerts on the function app (HTTP 5xx) and the storage account (throttled, busy or timed-out transactions), and the e-mail action group they notify.'

@description('Name prefix of the alert rules and the action group.')
param namePrefix string

@description('Tags applied to every resource in this module.')
param tags object = {}

@description('E-mail address that receives the alerts. Empty: the alert rules still fire and show in the portal, but no action group is created and nobody is notified.')
param alertEmailAddress string = ''

@description('Name of the function app whose HTTP 5xx responses are watched.')
param functionAppName string

@description('Name of the storage account whose throttled and server-busy transactions are watched.')
param storageAccountName string

@description('HTTP 5xx responses in five minutes above which the function app alert fires.')
@minValue(0)
param http5xxThreshold int = 5

@description('Throttled, server-busy or server-timeout storage transactions in five minutes above which the storage alert fires.')
@minValue(0)
param storageThrottlingThreshold int = 0

var notify = !empty(alertEmailAddress)

// Storage `Transactions` ResponseType values that mean the account is throttling the app or cannot keep up.
var storageBusyResponseTypes = [
  'ServerBusyError'
  'ServerTimeoutError'
  'ClientThrottlingError'
  'ClientAccountRequestThrottlingError'
  'ClientAccountBandwidthThrottlingError'
]

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (notify) {
  name: '${namePrefix}-ops'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'referrals'
    enabled: true
    emailReceivers: [
      {
        name: 'ops-email'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

// Http5xx is the platform metric "HTTP Server Errors" of Microsoft.Web/sites: it counts 5xx answers
// whether the code or the host produced them, so it also fires while the host cannot reach its storage.
resource http5xxAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-http-5xx'
  location: 'global'
  tags: tags
  properties: {
    description: 'The Referrals API answered more than ${http5xxThreshold} requests with HTTP 5xx in five minutes.'
    severity: 1
    enabled: true
    scopes: [
      functionApp.id
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'http5xx'
          metricNamespace: 'Microsoft.Web/sites'
          metricName: 'Http5xx'
          timeAggregation: 'Total'
          operator: 'GreaterThan'
          threshold: http5xxThreshold
        }
      ]
    }
    actions: notify ? [
      {
        actionGroupId: actionGroup.id
      }
    ] : []
  }
}

resource storageThrottlingAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-storage-throttling'
  location: 'global'
  tags: tags
  properties: {
    description: 'The storage account throttled, or was too busy for, more than ${storageThrottlingThreshold} transactions in five minutes.'
    severity: 2
    enabled: true
    scopes: [
      storageAccount.id
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'throttledOrBusy'
          metricNamespace: 'Microsoft.Storage/storageAccounts'
          metricName: 'Transactions'
          timeAggregation: 'Total'
          operator: 'GreaterThan'
          threshold: storageThrottlingThreshold
          dimensions: [
            {
              name: 'ResponseType'
              operator: 'Include'
              values: storageBusyResponseTypes
            }
          ]
        }
      ]
    }
    actions: notify ? [
      {
        actionGroupId: actionGroup.id
      }
    ] : []
  }
}

output actionGroupName string = notify ? actionGroup.name : ''
output alertNames array = [
  http5xxAlert.name
  storageThrottlingAlert.name
]
