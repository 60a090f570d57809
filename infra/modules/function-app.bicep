metadata description = 'Flex Consumption (FC1) plan and the Linux Python 3.13 function app. Every connection uses the user-assigned identity: no keys or connection strings.'

@description('Name of the Flex Consumption plan.')
param planName string

@description('Name of the function app; it becomes <name>.azurewebsites.net.')
param appName string

@description('Azure region of the plan and the app. It must offer Flex Consumption: az functionapp list-flexconsumption-locations.')
param location string = resourceGroup().location

@description('Tags applied to every resource in this module.')
param tags object = {}

@description('Name of the user-assigned managed identity the app runs as.')
param identityName string

@description('Name of the storage account used for host storage, the deployment package and the Referrals table.')
param storageAccountName string

@description('Name of the blob container that receives the deployment package.')
param deploymentContainerName string

@description('Table service endpoint the app reads, without a trailing slash.')
param tableServiceUri string

@description('Name of the table that stores the referrals.')
param referralsTableName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Audience (aud) that access tokens must carry: the application (client) id of the API registration, as in Entra v2 tokens.')
param authAudience string

@description('Home tenant id of the API app registration.')
param authTenantId string

@description('Comma-separated partner tenant ids whose tokens are accepted; empty for the home tenant only.')
param authAllowedTenants string

@description('Upper bound on the number of instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each instance, in MB: the sizes Flex Consumption offers.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy is a per-region production choice that also calls for zone-redundant storage; off by default to keep dev environments cheap.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Clients authenticate with Entra ID bearer tokens, not client certificates.
  // checkov:skip=CKV_AZURE_212:Flex Consumption counts instances in functionAppConfig.scaleAndConcurrency (alwaysReady: one for the webhook timer; HTTP scales from zero), not the siteConfig.numberOfWorkers this check reads.
  // checkov:skip=CKV_AZURE_213:The platform health check is not available on Flex Consumption.
  // checkov:skip=CKV_AZURE_222:Partner organisations call the API over the internet; every request needs a function key and an Entra ID token.
  // checkov:skip=CKV_AZURE_78:Flex Consumption refuses siteConfig.ftpsState (ARM error 51021), so it cannot be set to Disabled; code reaches a Flex app only through its deployment container.
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      // No ftpsState (nor linuxFxVersion): Flex Consumption refuses both with ARM error 51021.
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        // Functions host storage through the identity: no AzureWebJobsStorage connection string.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storageAccount.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identity.properties.clientId
        }
        // Referrals table, read by the app code.
        {
          name: 'REFERRALS_STORAGE__tableServiceUri'
          value: tableServiceUri
        }
        {
          name: 'REFERRALS_STORAGE__clientId'
          value: identity.properties.clientId
        }
        {
          name: 'REFERRALS_TABLE'
          value: referralsTableName
        }
        // Entra ID token validation.
        {
          name: 'AUTH_AUDIENCE'
          value: authAudience
        }
        {
          name: 'AUTH_TENANT_ID'
          value: authTenantId
        }
        {
          name: 'AUTH_ALLOWED_TENANTS'
          value: authAllowedTenants
        }
        // Webhooks: receivers are partner URLs on the internet; http to loopback is for local use only.
        {
          name: 'WEBHOOKS_ALLOW_LOOPBACK'
          value: 'false'
        }
        // DefaultAzureCredential picks the user-assigned identity.
        {
          name: 'AZURE_CLIENT_ID'
          value: identity.properties.clientId
        }
        // The connection string only locates the ingestion endpoint: with local auth disabled
        // on the component, telemetry is accepted only with the identity's Entra token.
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        // The webhook delivery timer fires every 5 s: one instance stays ready for it, so a healthy
        // receiver hears of a change within 15 s even when no request keeps the app awake.
        alwaysReady: [
          {
            name: 'function:deliver_events'
            instanceCount: 1
          }
        ]
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.13'
      }
    }
  }
}

// Basic-auth publishing off for the SCM (deployment) endpoint: `func azure functionapp publish` deploys
// to Flex Consumption with the caller's Entra token, never with a publishing password. No `ftp` policy:
// Flex refuses FTP settings (ftpsState), and neither Flex reference template nor the Terraform Flex
// resource sets one, so nothing shows that Flex accepts it.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
