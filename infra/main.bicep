// Referrals API: everything the service needs, in one subscription-scope deployment.
//
//   az deployment sub create --name referrals-<env> --location <region> \
//     --template-file infra/main.bicep --parameters infra/main.parameters.json \
//     --parameters environmentName=<env> authAudience=<api-app-id>
//
// The deployment creates the resource group, then deploys the local modules into it.
// See infra/README.md for prerequisites, publishing and partner onboarding.
targetScope = 'subscription'

metadata description = 'Referrals API on Azure Functions Flex Consumption with identity-only access to Storage and Application Insights.'

@description('Short environment name, for example dev, test or prod: 1 to 20 lowercase letters, digits and hyphens, starting with a letter. It names the resource group and, with the subscription and region, seeds the unique suffix of every other resource name.')
@minLength(1)
@maxLength(20)
param environmentName string

@description('Azure region of every resource; defaults to the deployment location. It must offer Flex Consumption: az functionapp list-flexconsumption-locations.')
param location string = deployment().location

@description('Name of the resource group to create. Empty means rg-referrals-<environmentName>.')
param resourceGroupName string = ''

@description('Application (client) id of the API app registration. Entra v2 access tokens (accessTokenAcceptedVersion 2) carry exactly this GUID as their audience (aud), never the api:// URI.')
@minLength(36)
@maxLength(36)
param authAudience string

@description('Home tenant id of the API app registration. Defaults to the tenant of this deployment.')
@minLength(36)
@maxLength(36)
param authTenantId string = tenant().tenantId

@description('Tenant ids of onboarded partner organisations whose tokens the API accepts. Empty means the home tenant only.')
param authAllowedTenantIds array = []

@description('Replication SKU of the storage account. Standard_LRS suits dev and test; prefer Standard_ZRS or Standard_GZRS in production.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Name of the table that stores the referrals.')
param referralsTableName string = 'Referrals'

@description('Upper bound on the number of instances the function app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each function app instance, in MB: the sizes Flex Consumption offers.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Days the Log Analytics workspace keeps logs and telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('E-mail address that receives the HTTP 5xx and storage throttling alerts. Empty: the alert rules still fire and show in the portal, but no action group is created and nobody is notified.')
@maxLength(254)
param alertEmailAddress string = ''

// Bicep has no regular expressions: @minLength and @maxLength above are the only checks ARM makes on a
// parameter before it starts. The characters are checked here. Every resource name is built from
// checkedEnvironmentName, so ARM evaluates it while it validates the template, before it creates
// anything; a bad name stops the deployment there, naming the rule in the error. ARM evaluates only
// the branch of ?: that applies, so the failing read of a missing property happens only for a bad name.
var environmentNameFirstCharacters = 'abcdefghijklmnopqrstuvwxyz'
var environmentNameCharacters = '${environmentNameFirstCharacters}0123456789-'
// Positions 0 to 19 (the @maxLength), written out because checkov's Bicep parser lacks range(). They are
// read from the name padded with allowed characters, so a read past the end of a short name is harmless.
var environmentNamePositions = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
var environmentNamePadded = '${environmentName}aaaaaaaaaaaaaaaaaaaa'
var environmentNameBadCharacters = filter(environmentNamePositions, i => !contains(environmentNameCharacters, substring(environmentNamePadded, i, 1)))
var environmentNameIsValid = empty(environmentNameBadCharacters) && contains(environmentNameFirstCharacters, substring(environmentName, 0, 1))
var checkedEnvironmentName = environmentNameIsValid ? environmentName : any({})['environmentName must be lowercase letters, digits and hyphens, starting with a letter']

// Same subscription + environment + region always gives the same suffix (redeploys are idempotent);
// any other combination gives a different one, so two environments never collide on global names.
var resourceToken = toLower(uniqueString(subscription().id, checkedEnvironmentName, location))
var tags = {
  application: 'referrals-api'
  environment: checkedEnvironmentName
}
var names = {
  resourceGroup: empty(resourceGroupName) ? 'rg-referrals-${checkedEnvironmentName}' : resourceGroupName
  identity: 'id-referrals-${resourceToken}'
  logAnalytics: 'log-referrals-${resourceToken}'
  applicationInsights: 'appi-referrals-${resourceToken}'
  storageAccount: 'st${resourceToken}'
  plan: 'plan-referrals-${resourceToken}'
  functionApp: 'func-referrals-${checkedEnvironmentName}-${resourceToken}'
  deploymentContainer: 'app-package'
  alerts: 'referrals-${checkedEnvironmentName}'
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'referrals-identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'referrals-monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'referrals-storage'
  scope: rg
  params: {
    name: names.storageAccount
    location: location
    tags: tags
    skuName: storageSkuName
    tableName: referralsTableName
    deploymentContainerName: names.deploymentContainer
  }
}

module roleAssignments 'modules/role-assignments.bicep' = {
  name: 'referrals-role-assignments'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'referrals-function-app'
  scope: rg
  params: {
    planName: names.plan
    appName: names.functionApp
    location: location
    tags: tags
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    tableServiceUri: storage.outputs.tableEndpoint
    referralsTableName: storage.outputs.tableName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    authAudience: authAudience
    authTenantId: authTenantId
    authAllowedTenants: join(authAllowedTenantIds, ',')
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // Roles first, so the host never starts without access to its storage.
  dependsOn: [
    roleAssignments
  ]
}

module alerts 'modules/alerts.bicep' = {
  name: 'referrals-alerts'
  scope: rg
  params: {
    namePrefix: names.alerts
    tags: tags
    alertEmailAddress: alertEmailAddress
    functionAppName: functionApp.outputs.name
    storageAccountName: storage.outputs.name
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output RESOURCE_GROUP_NAME string = rg.name
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_DEFAULT_HOSTNAME string = functionApp.outputs.defaultHostName
output FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
output STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output REFERRALS_TABLE_NAME string = storage.outputs.tableName
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATION_INSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output ALERT_RULE_NAMES array = alerts.outputs.alertNames
output ALERT_ACTION_GROUP_NAME string = alerts.outputs.actionGroupName
